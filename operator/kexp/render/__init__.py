"""Pure functions that turn a resolved Experiment into the objects the operator creates.

Nothing here touches the network; every function is unit-tested against whole objects.
"""
