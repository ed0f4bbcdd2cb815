"""Client sessions and the routing of every message between an agent and its upstreams."""
