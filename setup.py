from setuptools import Extension, find_packages, setup

setup(
    name="tickmesh",
    version="0.1.0",
    description="A brokerless crypto-trading mesh: ZeroMQ + msgpack nodes under supervisord",
    python_requires=">=3.11",
    packages=find_packages(include=["nodes", "nodes.*", "proto", "proto.*", "tools", "tools.*"]),
    include_package_data=True,
    # the envelope decoder in C; optional: without a compiler proto.codec uses its Python twin
    ext_modules=[Extension("proto._speedups", ["proto/_speedups.c"], optional=True)],
    install_requires=[
        "pyzmq>=25,<28",
        "msgpack>=1.0,<2",
        "supervisor>=4.2,<5",
        "websockets>=12,<14",            # coinbase-advanced-py pins <14 and uses the legacy client API
        "coinbase-advanced-py>=1.8,<2",
        "numba>=0.59,<1",
        "numpy>=1.26,<3",
        "prometheus-client>=0.20,<1",
        "pymsteams>=0.2.2,<1",
        "requests>=2.31,<3",
        "PyJWT>=2.8,<3",
        "cryptography>=42",
        "matplotlib>=3.8,<4",            # tickmesh report: charts as PNG (Agg), embedded in report.html
        "rich>=13,<16",                  # tickmesh top: the live terminal screen
    ],
    extras_require={
        "test": ["pytest>=8,<10", "hypothesis>=6.100,<7", "pytest-timeout>=2.3,<3"],
    },
    entry_points={"console_scripts": ["tickmesh=tools.cli:main"]},
)
