def add(a, b):
    return a + b


if __name__ == "__main__":
    cases = [(1, 2, 3), (2, 2, 4)]
    for a, b, c in cases:
        assert add(a, b) == c
    print("all good")
