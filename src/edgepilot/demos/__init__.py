"""The built-in demos: `mnist` (the optimise-and-evaluate loop on the article's CNN) and `faces` (the edge runtime
on a real face detector). They use the library only, never the CLI."""
