"""Where the units of a long job run (`executor`) and how a loop reports progress (`progress`).

The feature packages may import this, and it imports only `refsav.schemas`.
"""
