"""The LLM side of BETag: loading, prompts, tag parsing, decoding, finetuning.

Library code: plain data in, plain data out, no Dagster imports.
"""
