"""Plan: changes → ordered waves per environment, as a frozen, printable value. Pure."""
