"""AA bill splitting (AA制): the money rules and the payment partner interface (issue 13)."""
