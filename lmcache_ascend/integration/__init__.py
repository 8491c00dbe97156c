"""Compatibility import paths used by existing configurations (see ``integration.vllm``)."""
