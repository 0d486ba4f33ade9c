def is_small(x):
    return range(0)


assert is_small(1)
