"""nnic's built-in plugins. Each module is a plugin found through nnic's own ``nnic`` entry points."""
