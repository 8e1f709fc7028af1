"""Tests of the clients in clients/ against a running daemon."""
