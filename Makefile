# The two commands of README.md. Each builds its own virtual environment from scratch-safe steps.
#   make demo  runtime-only install (no torch), then sample / reconstruct / interpolate / compress + decompress
#              (lossy, near-lossless with --max-error 4, lossless) / denoise / score
#   make test  torch==2.13.0 first (an unpinned torch can pull a multi-GB CUDA build), then .[train,test], then pytest
#              (after web-deps: the JavaScript package's parity tests run Node and headless Chromium)
#   make web   serve the browser page (web/index.html) on http://127.0.0.1:8000/web/
PYTHON ?= python3
DEMO_VENV := .venv-demo
TEST_VENV := .venv-test
OUT := demo-out

.PHONY: demo test clean web web-deps

demo:
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install -q .
	@$(DEMO_VENV)/bin/python -c "import importlib.util, sys; sys.exit('torch is installed in the runtime venv' if importlib.util.find_spec('torch') else 0)"
	mkdir -p $(OUT)
	$(DEMO_VENV)/bin/edgevae info
	$(DEMO_VENV)/bin/edgevae sample -n 64 --seed 0 -o $(OUT)/samples.png --force
	$(DEMO_VENV)/bin/edgevae reconstruct examples/*.png -o $(OUT)/reconstructions.png --force
	$(DEMO_VENV)/bin/edgevae interpolate examples/sneaker.png examples/ankle-boot.png --steps 10 -o $(OUT)/interpolation.png --force
	$(DEMO_VENV)/bin/edgevae compress examples/*.png -o $(OUT)/examples.evz --force
	$(DEMO_VENV)/bin/edgevae info $(OUT)/examples.evz
	$(DEMO_VENV)/bin/edgevae decompress $(OUT)/examples.evz -o $(OUT)/decompressed.png --force
	$(DEMO_VENV)/bin/edgevae compress examples/*.png -o $(OUT)/examples-lossless.evz --lossless --force
	$(DEMO_VENV)/bin/edgevae decompress $(OUT)/examples-lossless.evz -o $(OUT)/lossless.npy --force
	@$(DEMO_VENV)/bin/python -c "import sys, numpy as np; from PIL import Image; \
	  orig = np.stack([np.asarray(Image.open(f))[None] for f in sys.argv[1:]]); \
	  assert np.array_equal(np.load('$(OUT)/lossless.npy'), orig), 'lossless round trip differs'; \
	  print('lossless round trip: all', len(orig), 'images exact')" examples/*.png
	$(DEMO_VENV)/bin/edgevae compress examples/*.png -o $(OUT)/examples-near-lossless.evz --max-error 4 --force
	$(DEMO_VENV)/bin/edgevae decompress $(OUT)/examples-near-lossless.evz -o $(OUT)/near-lossless.npy --force
	@$(DEMO_VENV)/bin/python -c "import sys, numpy as np; from PIL import Image; \
	  orig = np.stack([np.asarray(Image.open(f))[None] for f in sys.argv[1:]]).astype(int); \
	  err = np.abs(np.load('$(OUT)/near-lossless.npy').astype(int) - orig).max(); \
	  assert err <= 4, f'near-lossless error {err} > 4'; \
	  print('near-lossless round trip: largest pixel error', err, '(bound 4)')" examples/*.png
	@$(DEMO_VENV)/bin/python -c "import sys, numpy as np; from PIL import Image; from edgevae.runtime.noise import corrupt; \
	  clean = np.stack([np.asarray(Image.open(f))[None] for f in sys.argv[1:]]); \
	  noisy = corrupt(clean, 'gaussian', 50, np.random.default_rng(0)); np.save('$(OUT)/noisy.npy', noisy); \
	  from edgevae.runtime.images import grid, to_pil; to_pil(grid(noisy)).save('$(OUT)/noisy.png')" examples/*.png
	$(DEMO_VENV)/bin/edgevae denoise $(OUT)/noisy.npy -o $(OUT)/denoised.png --sigma 50 --force
	$(DEMO_VENV)/bin/edgevae score examples/*.png -o $(OUT)/scores.csv --force
	@echo "demo outputs in $(OUT)/"

test: web-deps
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install -q torch==2.13.0
	$(TEST_VENV)/bin/pip install -q ".[train,test]"
	$(TEST_VENV)/bin/python -m pytest -q

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV) $(OUT) build *.egg-info web/node_modules

# The JavaScript package's dependencies (onnxruntime-node/-web, playwright-core to drive Debian's
# Chromium) from web/package-lock.json. --ignore-scripts: onnxruntime-node's install script
# fetches optional GPU extras; its CPU library ships inside the package. Node.js and Chromium
# come from apt when missing.
WEB_STAMP := web/node_modules/.package-lock.json
WEB_PORT ?= 8000

web-deps: $(WEB_STAMP)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq chromium)

$(WEB_STAMP): web/package.json web/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq nodejs npm)
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

web: web-deps
	node web/serve.mjs --port $(WEB_PORT)
