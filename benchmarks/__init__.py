"""Benchmarks for locquota: ratios measured in one run, printed as a table (SPEC section 10).

They report; they never assert timings. Tests assert behaviour.
"""
