

def init_app(app) -> None:
    """Register the ceremonies' JSON endpoints, the passkeys page and the template helpers."""
    from . import views

    views.init_app(app)
