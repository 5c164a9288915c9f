"""cProfile of the client-credentials token endpoint inside one app process (PostgreSQL + Redis, production
settings as in run.py), through Flask's test client: `python bench/profile_cc.py [N]`. Prints the top functions."""
import base64, cProfile, io, os, pstats, secrets, sys, tempfile
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
db = f"idp_prof_{os.getpid()}"
admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
admin.execute(f'CREATE DATABASE "{db}"')
tmp = tempfile.mkdtemp()
os.environ.update(IDP_ISSUER="http://localhost:18080", SECRET_KEY=secrets.token_urlsafe(48),
                  DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
                  REDIS_URL="redis://127.0.0.1:6379/14", IDP_KEYS_DIR=tmp + "/keys", IDP_RATELIMIT_ENABLED="false",
                  IDP_LOG_LEVEL="WARNING", IDP_OUTBOX_WORKER="off")
try:
    sys.path.insert(0, str(ROOT))
    from app import create_app
    from app.cli import create_client
    from flask_migrate import upgrade
    app = create_app()
    with app.app_context():
        upgrade()
        client, secret = create_client("Prof", [], grant_types=["client_credentials"], scope="profile email")
        cid = client.client_id
    c = app.test_client()
    h = {"Authorization": "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()}
    for _ in range(50):
        assert c.post("/token", data={"grant_type": "client_credentials"}, headers=h).status_code == 200
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(N):
        c.post("/token", data={"grant_type": "client_credentials"}, headers=h)
    prof.disable()
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    print(f"{N} requests, {st.total_tt / N * 1000:.2f} ms profiled CPU per request (cProfile inflates Python-heavy code)")
    st.sort_stats("cumulative").print_stats(45)
    st.sort_stats("tottime").print_stats(20)
    print(s.getvalue())
finally:
    admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
