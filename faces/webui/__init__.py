"""The web UI face (Gradio): the page, one module per tab, i18n."""
