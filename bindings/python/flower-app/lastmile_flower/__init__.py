"""lastmile spectral model sharding on Flower: `server_app.app` and `client_app.app`."""
