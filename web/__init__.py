"""The appliance shell: configuration, the application factory, the operator
UI and the `cargohold` command line."""
