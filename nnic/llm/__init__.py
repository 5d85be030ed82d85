"""One-shot compression of language models: what the ``wanda``, ``sparsegpt``, ``rtn``, ``gptq``, ``awq`` and
``smoothquant`` plugins share.

- :mod:`nnic.llm.runner`: the sequential calibration runner (block by block, one block's activations in memory);
- :mod:`nnic.llm.blocks`: finding the transformer blocks; :mod:`nnic.llm.layers`: Linear and GPT-2 Conv1D as
  ``[out, in]`` matrices;
- :mod:`nnic.llm.hessian`, :mod:`nnic.llm.obs`: input Hessians and the SparseGPT / GPTQ updates;
- :mod:`nnic.llm.groupquant`, :mod:`nnic.llm.patterns`: group-wise quantization grids and exact sparsity patterns;
- :mod:`nnic.llm.oneshot`: the pruner and quantizer bases;
- :mod:`nnic.llm.text`: held-out perplexity on text that ships with Python, and a tiny GPT trained on it.

The algorithms themselves are ordinary plugins in ``nnic/builtins/``.
"""
