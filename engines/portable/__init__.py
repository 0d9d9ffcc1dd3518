"""The portable engine: Llama/Mistral in PyTorch with a paged KV cache and continuous batching."""
