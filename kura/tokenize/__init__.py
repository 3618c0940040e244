"""Tokenizer training and encoding."""
