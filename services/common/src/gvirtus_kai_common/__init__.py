"""Code shared by the GVirtuS-KAI services (kept here so no service copies another's)."""
