"""Who is calling: verified identities (JWT) and the roles they hold."""
