"""Triton, the serving runtime's implementation (ftops.serve.runtime).

- server.py      the tritonserver process (through ftops.procs), its ports, an external Triton
- models.py      the models of a deployed version: names and config.pbtxt per backend
- repository.py  the model repository: write, verify, list, remove versions
- client.py      TritonClient: classify, load / unload, readiness, statistics; error wording
- runtime.py     TritonRuntime / TritonRepository: the above behind the runtime interface
"""
