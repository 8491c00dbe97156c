"""vLLM (PyTorch) adapter: the in-process KV connector for vLLM CPU and vllm-ascend."""
