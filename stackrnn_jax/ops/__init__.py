"""Building blocks that strategies share and that are not strategies themselves.

``linear_scan``: linear recurrences in O(log T) depth; ``newton``: Newton's method on a
whole trajectory (DEER); ``recurrent_split``: each cell's step cut at its recurrent matmul.
"""
