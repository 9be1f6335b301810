"""The response cache: keys, stored entries, the memory and disk tiers, and the tiers together."""
