from nnic.measure.flops import count_flops, count_params  # noqa: F401  (moved to nnic.measure)
