"""Floor 4: the Typer commands — parse, call one function, render."""
