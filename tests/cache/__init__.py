"""The response cache: its tiers, keys, signing, a cold container, the shared table, several processes."""
