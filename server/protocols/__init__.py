"""Request and response models per API beyond OpenAI's chat and completions (server/protocol.py)."""
