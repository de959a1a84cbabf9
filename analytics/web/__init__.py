"""The pages' static files (docs/pages.md), shipped inside the package: no Node, no build step, no CDN."""
