"""Deciding and shipping an epoch: blind ranking, votes, promotion, the HTML report, run history."""
