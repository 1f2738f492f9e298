"""Crashes kept on a machine: the core handler (``redhand collect``), their signatures and
buckets, and ``redhand crashes``."""
