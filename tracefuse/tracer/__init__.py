"""The tracer stage: `tracefuse.compile` captures calls as IR graphs (context.py records ops,
capture.py traces forward and backward, api.py guards and caches, runner.py executes,
dump.py explains)."""
