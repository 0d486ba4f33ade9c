def add(a, b):
    return a - b


if __name__ == "__main__":
    assert add(1, 2) == 3
    assert add(2, 2) == 4
