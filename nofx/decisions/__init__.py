"""Track A: the decision engine — score every candidate, assess its risk, decide who must agree,
explain the choice. Plain functions over `models.decisions`; activities wrap them."""
