// /docs (Swagger UI) and /redoc (ReDoc): one page, both viewers shipped with the package (static/vendor). The OpenAPI
// document needs the API's bearer token when one is set: it is fetched here with the token the dashboard stored (or
// one typed into the gate form), and Swagger UI's "Try it out" requests carry it too.
(() => {
  const viewer = location.pathname.replace(/\/+$/, '').endsWith('/redoc') ? 'redoc' : 'swagger';
  document.title = `sentinel API — ${viewer === 'redoc' ? 'ReDoc' : 'Swagger UI'}`;
  const assets = viewer === 'redoc' ? ['/vendor/redoc.standalone.js'] : ['/vendor/swagger-ui-bundle.js', '/vendor/swagger-ui.css'];
  const loaded = Promise.all(assets.map((src) => new Promise((resolve, reject) => {
    const node = src.endsWith('.css') ? Object.assign(document.createElement('link'), { rel: 'stylesheet', href: src })
      : Object.assign(document.createElement('script'), { src });
    node.onload = resolve;
    node.onerror = () => reject(new Error(`${src} did not load`));
    document.head.append(node);
  })));
  const hash = new URLSearchParams(location.hash.slice(1));
  let token = hash.get('token') || localStorage.getItem('sentinel.token') || '';
  const gate = document.getElementById('token-gate');

  async function show(spec) {
    await loaded;
    gate.hidden = true;
    const el = document.getElementById('viewer');
    if (viewer === 'redoc') {
      window.Redoc.init(spec, { hideDownloadButton: false }, el);
      return;
    }
    window.SwaggerUIBundle({
      spec, domNode: el, validatorUrl: null, deepLinking: true,
      requestInterceptor: (req) => {
        if (token && !req.headers.Authorization) req.headers.Authorization = `Bearer ${token}`;
        return req;
      },
    });
  }

  async function load() {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const r = await fetch('/openapi.json', { headers });
    if (r.status === 401) {
      document.getElementById('gate-text').textContent = token
        ? 'That token was refused: enter the API\'s bearer token.'
        : 'The API wants a bearer token (SENTINEL_API_TOKEN or SENTINEL_API_READ_TOKEN).';
      gate.hidden = false;
      document.getElementById('gate-token').focus();
      return;
    }
    if (!r.ok) { document.getElementById('viewer').textContent = `/openapi.json: ${r.status}`; return; }
    show(await r.json());
  }

  gate.addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = document.getElementById('gate-token').value.trim();
    localStorage.setItem('sentinel.token', token);
    load();
  });
  load();
})();
