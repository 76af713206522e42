{#- Which item attribute stands in for native tags: the native_tags_from_attribute var of
    dbt_project.yml read once. Returns {'attribute': a lower-cased attribute name or none,
    'only_without_tag_file': true when the attribute is used only if no native tag row landed}. -#}
{% macro native_tags_attribute() %}
    {%- set setting = var('native_tags_from_attribute', 'auto') | string | trim | lower -%}
    {%- if setting == '' -%}
        {{ exceptions.raise_compiler_error("native_tags_from_attribute is empty: use auto, none or an attribute name") }}
    {%- elif setting == 'none' -%}
        {{ return({'attribute': none, 'only_without_tag_file': false}) }}
    {%- elif setting == 'auto' -%}
        {{ return({'attribute': 'genre', 'only_without_tag_file': true}) }}
    {%- else -%}
        {{ return({'attribute': setting, 'only_without_tag_file': false}) }}
    {%- endif -%}
{% endmacro %}
