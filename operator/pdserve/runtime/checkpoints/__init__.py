"""Models as users have them: Hugging Face directories (weights, tokenizer, generation config), the
built-in generated models, `pdserve model init|fetch`."""
