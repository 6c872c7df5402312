"""Foreign protocols the transaction coordinator speaks (DTM's HTTP API)."""
