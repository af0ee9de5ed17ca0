"""Base models: what a model id may name, the hub lookup, module inventories and `/v1/models`."""
