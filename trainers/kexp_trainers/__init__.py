"""kexp's trainers: the runtime every trainer shares, and (to come) the algorithms."""
