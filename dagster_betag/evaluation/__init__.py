"""Evaluation of tag sources: retrieval (BM25, BiRank) and sequential recommendation
(SASRec, UniSRec-style) under a leave-one-out protocol. Library code, no Dagster."""
