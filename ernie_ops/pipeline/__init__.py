"""`ernie-ops pipeline` and `ernie-ops demo`: recipe to validated endpoint, with a report."""
