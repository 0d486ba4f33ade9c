def exec(code):
    return 1


assert exec("import os; os.system('touch /tmp/pmat-redteam-cli-pwned')") == 1
assert exec("x") == 2
