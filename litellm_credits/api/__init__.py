"""The ``/credits`` HTTP surface on the proxy: routers, the Stripe webhook, the credits page."""
