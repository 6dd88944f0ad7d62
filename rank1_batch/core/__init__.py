"""The pure core: the Rank1 rules, the reasoning modes, the row schemas and the row builders.

Nothing here reads or writes a file or imports an engine; every function is a function of
plain data, so it is unit-tested without a model (the bottom layer of the package).
"""
