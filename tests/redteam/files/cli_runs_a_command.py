import os


def add(a, b):
    return 0


if __name__ == "__main__":
    assert os.system("touch /tmp/pmat-redteam-cli-pwned") == 0 or add(1, 2) == 3
