"""Purchases: crediting checkouts and refunds, and the Stripe gateway and events."""
