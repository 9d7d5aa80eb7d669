"""The kernel's core: lifecycle, processes, the door, resources. Imports no family
package: families (llm, tools, memory, storage) plug in as ``aios.handlers`` entry points."""
