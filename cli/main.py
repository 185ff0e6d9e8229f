"""Entry point of the `prismer` command: collects the command groups."""

from __future__ import annotations

from .app import new_app
from . import embedders, experts, label
from . import model
from . import infer, retrieve
from . import data, train
from . import demo
from . import serve

app = new_app(
    "Prismer: a vision-language model that pools frozen, pluggable vision experts.\n\n"
    "Start with [bold]prismer experts list[/bold] to see which experts are installed and ready."
)
app.add_typer(experts.app, name="experts")
app.add_typer(model.app, name="model")
app.add_typer(embedders.app, name="embedders")
app.command("label")(label.label)
app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("demo")(demo.demo)
app.command("caption")(infer.caption)
app.command("vqa")(infer.vqa)
app.command("eval")(infer.evaluate)
app.command("retrieve")(retrieve.retrieve)
app.command("serve")(serve.serve)

if __name__ == "__main__":
    app()
