"""How a domain's images are made safe to read, and put back afterwards."""
